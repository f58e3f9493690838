//! The monitor `run` starts each container through (`switchboard monitor`, hidden): it
//! is the container's parent for as long as the container runs, whether a terminal stays
//! attached or not, so that how the container ended is known afterwards. It records the
//! container's pid in `info.json`, lets go of the container's stdio (so the output ends
//! when the container's does), waits, records the end in `exit.json` (`ps -a`, `wait`),
//! removes the container with `--rm`, and exits with the container's status.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use clap::Args;

use crate::agent::{self, ExitRecord, Info, Supervisor, Timeouts, cri};

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// The container's directory (its `info.json`).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
    /// The container has a terminal: it becomes the command's controlling terminal.
    #[arg(long)]
    pub tty: bool,
    /// Remove the container once it ended and its switchboard exited.
    #[arg(long)]
    pub rm: bool,
    /// Drain the switchboard's log pipe (fd 3: stdout) into a CRI log in this directory.
    #[arg(long, value_name = "DIR")]
    pub cri_dir: Option<PathBuf>,
    /// Fd 4 is stderr's log pipe (a container without a terminal).
    #[arg(long)]
    pub cri_stderr: bool,
    #[arg(long, value_name = "BYTES", default_value_t = 10 << 20)]
    pub log_max_size: u64,
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub log_max_files: u32,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Runs with the container's stdio as its own 0, 1 and 2, in a session of its own.
pub fn monitor(args: &MonitorArgs) -> ExitCode {
    // The log file exists before the container does (`logs` right after `run -d`).
    let writer = match &args.cri_dir {
        Some(dir) => match cri::Writer::open(dir, args.log_max_size, args.log_max_files as usize) {
            Ok(w) => Some(w),
            Err(e) => return not_started(args, format!("cannot open the log in {}: {e}", dir.display())),
        },
        None => None,
    };
    let sink = writer.map(|writer| {
        let (out, err) = (log_pipe(3), args.cri_stderr.then(|| log_pipe(4)).flatten());
        std::thread::spawn(move || match out {
            Some(out) => cri::drain(out, err, writer),
            None => Ok(()),
        })
    });
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    crate::tty::new_session(&mut cmd, args.tty, 2);
    let spawned = cmd.spawn();
    drop(cmd);
    // The container's stdio is the container's alone from now on.
    if let Ok(null) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
        let _ = nix::unistd::dup2_stdout(&null);
        let _ = nix::unistd::dup2_stderr(&null);
    }
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return not_started(args, format!("cannot start {}: {e}", args.command[0])),
    };
    // A container whose pid is not recorded could be neither stopped nor waited for:
    // it does not run.
    let recorded = Info::load(&args.dir).and_then(|mut info| {
        info.container_pid = Some(child.id() as i32);
        info.container_start = agent::supervisor::start_time(child.id() as i32);
        info.save(&args.dir)
    });
    if let Err(e) = recorded {
        let _ = child.kill();
        let _ = child.wait();
        return not_started(args, format!("cannot record the container: {e}"));
    }
    let record = match child.wait() {
        Ok(status) => ExitRecord::of(status),
        Err(e) => ExitRecord::unknown(format!("waiting for the container failed: {e}")),
    };
    // The log is complete once the switchboard exited (it closes its log pipes): only
    // then is the end recorded, so that whoever sees the record sees the whole log.
    match sink {
        Some(sink) => {
            let _ = sink.join();
        }
        // A raw log is written by the switchboard itself: it is complete once that exited.
        None => wait_for_server(&args.dir),
    }
    let _ = record.save(&args.dir);
    if args.rm {
        remove(args);
    }
    ExitCode::from(record.shell_code())
}

/// The command was not started, for this reason: recorded, and 127.
fn not_started(args: &MonitorArgs, why: String) -> ExitCode {
    let record = ExitRecord::not_started(why);
    let _ = record.save(&args.dir);
    ExitCode::from(record.shell_code())
}

/// Waits until the container's switchboard exited.
fn wait_for_server(dir: &std::path::Path) {
    let Some(server) = Info::load(dir).ok().and_then(|i| i.server()) else { return };
    while server.is_alive() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Inherited descriptor `fd` (a log pipe's read end), opened again through /proc as a
/// descriptor of our own; the inherited number is closed.
fn log_pipe(fd: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()?;
    let _ = nix::unistd::close(fd);
    Some(opened.into())
}

/// Waits for the container's switchboard to exit (as a cleanup does: a grace period, then
/// signals), then removes the container's directory.
fn remove(args: &MonitorArgs) {
    let Some(runtime) = args.dir.parent() else { return };
    let exe = std::env::current_exe().unwrap_or_default();
    let mut supervisor = Supervisor::new(runtime.to_path_buf(), exe, Timeouts::default());
    if let Ok(id) = supervisor.adopt(&args.dir) {
        let _ = supervisor.cleanup(&id);
    }
}
