//! The supervisor: what a container agent does with switchboards (docs/protocol.md §7), as a
//! library. It launches one per container, finds them again after the agent restarts,
//! tells when one dies, and cleans up.
//!
//! A process is identified by its pid *and* its start time (and the boot), both recorded
//! in `info.json`, so a pid the kernel gave to another process meanwhile is never adopted
//! or signalled.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use super::listing::{Entry, State, list};
use super::{ContainerIo, Info, Launch};

/// What failed, and for which container.
#[derive(Debug)]
pub enum SupervisorError {
    /// The container is not known to this supervisor.
    Unknown(String),
    /// Launching its switchboard failed (nothing was left behind).
    Prepare { id: String, error: io::Error },
    /// Its socket did not accept a connection in time.
    Connect { id: String, error: io::Error },
    /// Reading or writing its state under the runtime directory failed.
    State { path: PathBuf, error: io::Error },
}

impl fmt::Display for SupervisorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SupervisorError::Unknown(id) => write!(f, "no switchboard is known for container '{id}'"),
            SupervisorError::Prepare { id, error } => write!(f, "cannot launch a switchboard for '{id}': {error}"),
            SupervisorError::Connect { id, error } => write!(f, "cannot connect to the switchboard of '{id}': {error}"),
            SupervisorError::State { path, error } => write!(f, "{}: {error}", path.display()),
        }
    }
}

impl std::error::Error for SupervisorError {}

/// A process as recorded: pid, start time (clock ticks after boot) and boot id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_time: u64,
}

/// The boot id, which changes at every boot (so pids from before a reboot never match).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The state and start time of `pid` (fields 3 and 22 of `/proc/<pid>/stat`), if it
/// exists. The command name before them is in parentheses and may hold spaces, or bytes
/// that are not UTF-8: fields are counted after the last ')'.
fn stat(pid: i32) -> Option<(u8, u64)> {
    let s = Stat::of(pid)?;
    Some((s.state, s.start_time))
}

/// What `/proc/<pid>/stat` says of a process.
struct Stat {
    state: u8,
    /// Its process group and session.
    pgrp: i32,
    session: i32,
    start_time: u64,
}

impl Stat {
    fn of(pid: i32) -> Option<Stat> {
        let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.get(stat.iter().rposition(|&b| b == b')')? + 2..)?;
        let rest = std::str::from_utf8(rest).ok()?;
        // Fields from 3 (the state) on.
        let fields: Vec<&str> = rest.split(' ').collect();
        Some(Stat {
            state: fields.first()?.bytes().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            session: fields.get(3)?.parse().ok()?,
            start_time: fields.get(19)?.parse().ok()?,
        })
    }
}

/// Whether a live process is in the session and process group `leader` made, started
/// no earlier than it (so: its descendant, whether or not the leader still runs). A
/// group's id is not given to a new process while the group has members; once it has
/// none, the number may go to a new process, which may make a session of its own: so
/// when a process other than the leader has its number, the group is known to be empty.
fn group_has_members(leader: i32, since: u64) -> bool {
    if Stat::of(leader).is_some_and(|s| s.start_time != since) {
        return false;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.flatten().any(|e| {
        e.file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
            .and_then(Stat::of)
            .is_some_and(|s| s.pgrp == leader && s.session == leader && s.start_time >= since && s.state != b'Z')
    })
}

/// The start time of `pid` (clock ticks after boot), if it is running.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, start)| start)
}

impl ProcessId {
    /// `pid` with a start time no process has: it never matches a live process.
    fn unmatched(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_time: u64::MAX,
        }
    }

    /// The identity of a running process.
    pub fn of(pid: i32) -> Option<ProcessId> {
        Some(ProcessId {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether this very process still runs (not a zombie, not a reused pid).
    pub fn is_alive(&self) -> bool {
        stat(self.pid).is_some_and(|(state, start)| state != b'Z' && start == self.start_time)
    }

    /// Sends `signal` if this very process still runs: through a pidfd where the kernel
    /// has them (once open, it names this process whatever becomes of the pid number; the
    /// start time, checked after opening it, tells that it is ours), else by pid.
    pub fn signal(&self, signal: Signal) -> bool {
        let pidfd = rustix::process::Pid::from_raw(self.pid)
            .and_then(|pid| rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok());
        let Some(sig) = rustix::process::Signal::from_named_raw(signal as i32) else { return false };
        match pidfd {
            Some(fd) => self.is_alive() && rustix::process::pidfd_send_signal(&fd, sig).is_ok(),
            None => self.is_alive() && kill(Pid::from_raw(self.pid), signal).is_ok(),
        }
    }

    /// Sends `signal` to this process's group if it leads one (a container started in a
    /// session of its own, whose children hold its stdio too), else to the process; only
    /// if this very process still runs, or, once it exited, if processes it started
    /// remain in the session and group it made (a shell's background child that keeps
    /// its stdout open).
    pub fn signal_group(&self, signal: Signal) -> bool {
        let pid = Pid::from_raw(self.pid);
        if !self.is_alive() {
            return self.group_alive() && nix::sys::signal::killpg(pid, signal).is_ok();
        }
        if nix::unistd::getpgid(Some(pid)) == Ok(pid) {
            nix::sys::signal::killpg(pid, signal).is_ok()
        } else {
            self.signal(signal)
        }
    }

    /// Whether this process, or any process of the session and group it made, still
    /// runs.
    pub fn group_alive(&self) -> bool {
        self.is_alive() || group_has_members(self.pid, self.start_time)
    }
}

/// How a cleanup ended the switchboard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// It exited by itself within the grace period (its status, when it is our child).
    Exited(Option<ExitStatus>),
    /// It needed SIGTERM.
    Terminated,
    /// It needed SIGKILL.
    Killed,
    /// It was not running any more.
    AlreadyGone,
}

/// What a recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Known containers whose switchboard runs: adopted.
    pub adopted: Vec<String>,
    /// Known containers whose switchboard is gone.
    pub gone: Vec<String>,
    /// Switchboards of containers the caller does not know: cleaned up.
    pub orphans: Vec<String>,
}

/// The timing of cleanups (as Mesos's agent times them: 5 s, then SIGTERM, then 60 s, then
/// SIGKILL; docs/protocol.md §7).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a switchboard gets to exit by itself once its container is gone.
    pub grace: Duration,
    /// How long it gets after SIGTERM before SIGKILL.
    pub terminate: Duration,
    /// How long `connect` waits for the socket.
    pub connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            grace: Duration::from_secs(5),
            terminate: Duration::from_secs(60),
            connect: Duration::from_secs(10),
        }
    }
}

struct Tracked {
    dir: PathBuf,
    info: Info,
    server: ProcessId,
    /// The server, when we launched it (then its exit status is ours to collect).
    child: Option<Child>,
    status: Option<ExitStatus>,
}

/// Switchboards under one runtime directory.
pub struct Supervisor {
    runtime_dir: PathBuf,
    server_exe: PathBuf,
    timeouts: Timeouts,
    tracked: HashMap<String, Tracked>,
}

impl Supervisor {
    pub fn new(runtime_dir: PathBuf, server_exe: PathBuf, timeouts: Timeouts) -> Supervisor {
        Supervisor {
            runtime_dir,
            server_exe,
            timeouts,
            tracked: HashMap::new(),
        }
    }

    pub fn runtime_dir(&self) -> &Path {
        &self.runtime_dir
    }

    fn tracked(&mut self, id: &str) -> Result<&mut Tracked, SupervisorError> {
        self.tracked
            .get_mut(id)
            .ok_or_else(|| SupervisorError::Unknown(id.to_string()))
    }

    /// Launches a switchboard for container `id` and returns the container's side of its
    /// stdio (for the container's stdin, stdout and stderr). A failure leaves nothing.
    pub fn prepare(&mut self, id: &str, mut launch: Launch) -> Result<ContainerIo, SupervisorError> {
        launch.id = Some(id.to_string());
        launch.runtime_dir = self.runtime_dir.clone();
        launch.server_exe = self.server_exe.clone();
        let prepared = super::prepare(&launch).map_err(|error| SupervisorError::Prepare {
            id: id.to_string(),
            error,
        })?;
        let Some(server) = ProcessId::of(prepared.server.id() as i32) else {
            // It exited at once: nothing of it may stay behind.
            let mut prepared = prepared;
            let _ = prepared.server.kill();
            let _ = prepared.server.wait();
            remove_state(&prepared.dir, &prepared.info);
            return Err(SupervisorError::Prepare {
                id: id.to_string(),
                error: io::Error::other("the switchboard exited at once"),
            });
        };
        self.tracked.insert(
            id.to_string(),
            Tracked {
                dir: prepared.dir,
                info: prepared.info,
                server,
                child: Some(prepared.server),
                status: None,
            },
        );
        Ok(prepared.io)
    }

    /// Tracks a switchboard we did not launch (its exit status is not ours to collect).
    fn track(&mut self, dir: PathBuf, info: Info, server: ProcessId) {
        let t = Tracked {
            dir,
            info,
            server,
            child: None,
            status: None,
        };
        self.tracked.insert(t.info.id.clone(), t);
    }

    /// Records the container's process (shown by `ps`, stopped by `stop`).
    pub fn set_container(&mut self, id: &str, pid: i32) -> Result<(), SupervisorError> {
        let t = self.tracked(id)?;
        t.info.container_pid = Some(pid);
        t.info.container_start = start_time(pid);
        t.info.save(&t.dir).map_err(|error| SupervisorError::State {
            path: t.dir.clone(),
            error,
        })
    }

    /// Reads the container's `info.json` again (another process, such as the monitor
    /// that started the container, recorded something in it).
    pub fn reload(&mut self, id: &str) -> Result<&Info, SupervisorError> {
        let t = self.tracked(id)?;
        t.info = Info::load(&t.dir).map_err(|error| SupervisorError::State {
            path: t.dir.clone(),
            error,
        })?;
        Ok(&t.info)
    }

    /// The container's info.
    pub fn info(&self, id: &str) -> Option<&Info> {
        self.tracked.get(id).map(|t| &t.info)
    }

    /// Connects to the container's switchboard, waiting for its socket up to the connect
    /// timeout (it appears once the switchboard listens).
    pub fn connect(&mut self, id: &str) -> Result<UnixStream, SupervisorError> {
        let deadline = Instant::now() + self.timeouts.connect;
        let socket = self.tracked(id)?.info.socket.clone();
        loop {
            match UnixStream::connect(&socket) {
                Ok(s) => return Ok(s),
                Err(error) if Instant::now() >= deadline => {
                    return Err(SupervisorError::Connect {
                        id: id.to_string(),
                        error,
                    });
                }
                Err(_) => {
                    if !self.is_running(id) {
                        let error = io::Error::new(io::ErrorKind::NotConnected, "the switchboard is not running");
                        return Err(SupervisorError::Connect {
                            id: id.to_string(),
                            error,
                        });
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    /// Whether the container's switchboard runs (collecting its status if it ended).
    pub fn is_running(&mut self, id: &str) -> bool {
        let Some(t) = self.tracked.get_mut(id) else { return false };
        if t.status.is_some() {
            return false;
        }
        if let Some(child) = &mut t.child {
            return match child.try_wait() {
                Ok(Some(status)) => {
                    t.status = Some(status);
                    false
                }
                _ => true,
            };
        }
        t.server.is_alive()
    }

    /// Waits until the switchboard exits (or `timeout` passes: then `Ok(None)`). Gives its
    /// status when it was our child; after a restart the status cannot be known (`None`
    /// inside), as with Mesos.
    pub fn watch(&mut self, id: &str, timeout: Duration) -> Result<Option<Option<ExitStatus>>, SupervisorError> {
        let deadline = Instant::now() + timeout;
        self.tracked(id)?;
        loop {
            if !self.is_running(id) {
                return Ok(Some(self.tracked(id)?.status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Ends the container's switchboard (its container is gone): it gets the grace period
    /// to exit by itself, then SIGTERM, then SIGKILL; then its socket and state go.
    pub fn cleanup(&mut self, id: &str) -> Result<Ended, SupervisorError> {
        let ended = self.end_server(id)?;
        let t = self.tracked.remove(id).expect("tracked above");
        remove_state(&t.dir, &t.info);
        Ok(ended)
    }

    /// Stops a container as [`Supervisor::stop`] does, but keeps its records and logs
    /// (only its socket goes), for `ps -a`, `logs` and `rm` later.
    pub fn stop_and_keep(&mut self, id: &str) -> Result<Ended, SupervisorError> {
        self.stop_container(id)?;
        let ended = self.end_server(id)?;
        let t = self.tracked.remove(id).expect("tracked above");
        if t.info.socket.parent() == Some(t.dir.as_path()) {
            let _ = std::fs::remove_file(&t.info.socket);
        }
        Ok(ended)
    }

    /// Ends the container's switchboard: the grace period to exit by itself, then
    /// SIGTERM, then SIGKILL.
    fn end_server(&mut self, id: &str) -> Result<Ended, SupervisorError> {
        let (grace, terminate) = (self.timeouts.grace, self.timeouts.terminate);
        let ended = if !self.is_running(id) {
            match self.tracked(id)?.status {
                Some(status) => Ended::Exited(Some(status)),
                None => Ended::AlreadyGone,
            }
        } else if let Some(status) = self.watch(id, grace)? {
            Ended::Exited(status)
        } else {
            let server = self.tracked(id)?.server;
            tracing::info!("sending SIGTERM to the switchboard of '{id}' (pid {})", server.pid);
            server.signal(Signal::SIGTERM);
            if self.watch(id, terminate)?.is_some() {
                Ended::Terminated
            } else {
                tracing::error!("sending SIGKILL to the switchboard of '{id}' (pid {})", server.pid);
                server.signal(Signal::SIGKILL);
                self.watch(id, Duration::from_secs(10))?;
                Ended::Killed
            }
        };
        Ok(ended)
    }

    /// After a restart: adopts the switchboards of the `known` containers that still run,
    /// reports those that are gone, and cleans up switchboards of containers the caller
    /// does not know (orphans).
    /// A runtime directory that is not private to us is refused (nothing in it is
    /// trusted); entries in it that are not directories of ours are left alone.
    pub fn recover(&mut self, known: &[&str]) -> Result<Recovery, SupervisorError> {
        let mut recovery = Recovery::default();
        let state = |error| SupervisorError::State {
            path: self.runtime_dir.clone(),
            error,
        };
        if !super::dirs::check_private(&self.runtime_dir).map_err(state)? {
            return Ok(recovery);
        }
        let dirs = std::fs::read_dir(&self.runtime_dir).map_err(state)?;
        for d in dirs.flatten() {
            let dir = d.path();
            if super::dirs::check_owned_dir(&dir).is_err() {
                continue;
            }
            let name = d.file_name().to_string_lossy().into_owned();
            let info = match Info::load(&dir) {
                Ok(info) => info,
                Err(_) => {
                    // A launch that died before it recorded anything (one still starting,
                    // younger than a minute, is left alone).
                    let young = d
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().map_or(true, |age| age < Duration::from_secs(60)));
                    if !young && !known.contains(&name.as_str()) {
                        let _ = std::fs::remove_dir_all(&dir);
                        recovery.orphans.push(name);
                    }
                    continue;
                }
            };
            let server = info.server().filter(ProcessId::is_alive);
            if known.contains(&info.id.as_str()) {
                match server {
                    Some(server) => {
                        recovery.adopted.push(info.id.clone());
                        self.track(dir, info, server);
                    }
                    None => {
                        // Tracked without a process, so that `cleanup` removes its state.
                        recovery.gone.push(info.id.clone());
                        let server = ProcessId::unmatched(info.server_pid);
                        self.track(dir, info, server);
                    }
                }
                continue;
            }
            // An orphan: its container is stopped first (it has nobody to serve it), then
            // its switchboard, as a cleanup does.
            if let Some(container) = info.container() {
                container.signal_group(Signal::SIGKILL);
            }
            if let Some(server) = server {
                let id = info.id.clone();
                self.track(dir, info, server);
                let _ = self.cleanup(&id);
            } else {
                remove_state(&dir, &info);
            }
            recovery.orphans.push(name);
        }
        recovery.adopted.sort();
        recovery.gone.sort();
        recovery.orphans.sort();
        Ok(recovery)
    }

    /// Stops a container and its switchboard: the container gets SIGTERM, then SIGKILL
    /// after the grace period; then its switchboard is cleaned up.
    pub fn stop(&mut self, id: &str) -> Result<Ended, SupervisorError> {
        self.stop_container(id)?;
        self.cleanup(id)
    }

    /// The container's process group gets SIGTERM, then SIGKILL after the grace period.
    fn stop_container(&mut self, id: &str) -> Result<(), SupervisorError> {
        let t = self.tracked(id)?;
        if let Some(container) = t.info.container() {
            container.signal_group(Signal::SIGTERM);
            let deadline = Instant::now() + self.timeouts.grace;
            while container.group_alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            container.signal_group(Signal::SIGKILL);
        }
        Ok(())
    }

    /// Cleans up a switchboard whose container never started: no grace period (it may
    /// be waiting for a first client that will not come), SIGTERM at once.
    pub fn discard(&mut self, id: &str) -> Result<Ended, SupervisorError> {
        let timeouts = self.timeouts;
        self.timeouts.grace = Duration::ZERO;
        let ended = self.cleanup(id);
        self.timeouts = timeouts;
        ended
    }

    /// Takes charge of one recorded container (`stop` from another process does this).
    pub fn adopt(&mut self, dir: &Path) -> Result<String, SupervisorError> {
        let info = Info::load(dir).map_err(|error| SupervisorError::State {
            path: dir.to_path_buf(),
            error,
        })?;
        let id = info.id.clone();
        if info.boot_id == boot_id()
            && info.server_start.is_none()
            && kill(Pid::from_raw(info.server_pid), None).is_ok()
        {
            // Its pid runs, but whether it is still this switchboard cannot be told.
            return Err(SupervisorError::State {
                path: dir.to_path_buf(),
                error: io::Error::other(format!(
                    "pid {} runs, but its start time was not recorded: it cannot be told to be this switchboard",
                    info.server_pid
                )),
            });
        }
        // A switchboard that no longer runs (or a pid now someone else's) never matches.
        let server = info.server().unwrap_or(ProcessId::unmatched(info.server_pid));
        self.track(dir.to_path_buf(), info, server);
        Ok(id)
    }
}

impl Drop for Supervisor {
    /// Switchboards we launched outlive us (they are in sessions of their own), but a
    /// child that already exited is reaped so no zombie stays behind.
    fn drop(&mut self) {
        for t in self.tracked.values_mut() {
            if let Some(child) = &mut t.child {
                let _ = child.try_wait();
            }
        }
    }
}

/// Removes a container's directory, its socket with it when it lies there. A socket a
/// record names elsewhere is left alone: the record is all that says it is ours.
///
/// The process that waited for the container (`run`'s monitor) may be recording its
/// end at that moment, putting a file back while the directory goes: it is removed
/// again until it is gone (for at most 5 s).
fn remove_state(dir: &Path, _info: &Info) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while dir.exists() && Instant::now() < deadline {
        let _ = std::fs::remove_dir_all(dir);
        if dir.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
