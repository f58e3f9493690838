//! `switchboard run`: start a command under a switchboard and attach this terminal, like
//! `docker run -it`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};

use clap::Args;
use command_fds::{CommandFdExt, FdMapping};

use crate::agent::{self, ContainerIo, Launch, Supervisor, Timeouts};
use crate::cli::attach::{self, Ended};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Give the command a terminal (its stdout and stderr then arrive merged, as stdout).
    #[arg(long, short)]
    pub tty: bool,
    /// Start it and return at once, printing its id and socket.
    #[arg(long, short)]
    pub detach: bool,
    /// Remove the container (its records and logs) once it exited and its switchboard
    /// is done.
    #[arg(long)]
    pub rm: bool,
    /// Name the container (default: 12 random hex digits).
    #[arg(long, value_name = "ID")]
    pub name: Option<String>,
    /// The socket path (default: <runtime dir>/<id>/sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Where the command's stdout and stderr logs go (default: <runtime dir>/<id>).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
    /// The logs' format: `cri` (one file for both streams, an entry per line with its
    /// time, stream and whether the line is whole, as kubelet and conmon write it, read
    /// by `switchboard logs`), or `raw` (the bytes as written, one file per stream).
    #[arg(long, value_name = "FORMAT", default_value = "cri", value_parser = ["cri", "raw"])]
    pub log_format: String,
    /// A CRI log rotates once it would grow past this (e.g. 10MiB, 512k, 1m).
    #[arg(long, value_name = "SIZE", default_value = "10MiB", value_parser = parse_size)]
    pub log_max_size: u64,
    /// How many files a CRI log keeps (the current one included).
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub log_max_files: u32,
    /// The runtime directory (default: $XDG_RUNTIME_DIR/switchboard, /run/switchboard for
    /// root, /tmp/switchboard-$UID otherwise).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// The keys that detach this terminal and leave the command running, e.g.
    /// ctrl-p,ctrl-q or ctrl-a,d; empty to have none.
    #[arg(long, value_name = "KEYS", default_value = "ctrl-p,ctrl-q")]
    pub detach_keys: String,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// A size in bytes: a number with an optional k, m or g (KiB, MiB, GiB) suffix.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = match &lower[digits.len()..] {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("'{other}' is not a unit: use k, m or g")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("'{t}' is not a size"))?;
    match n.checked_mul(unit) {
        Some(0) | None => Err(format!("'{t}' is not a size between 1 byte and 16 EiB")),
        Some(bytes) => Ok(bytes),
    }
}

/// Why `run` stops early: what to say, and the exit status.
struct Stop {
    code: u8,
    text: String,
}

impl Stop {
    fn new(code: u8, text: impl Into<String>) -> Stop {
        Stop {
            code,
            text: text.into(),
        }
    }
}

pub fn run(args: &RunArgs) -> ExitCode {
    match run_to_end(args) {
        Ok(code) => code,
        Err(stop) => {
            eprintln!("switchboard run: {}", stop.text);
            ExitCode::from(stop.code)
        }
    }
}

fn run_to_end(args: &RunArgs) -> Result<ExitCode, Stop> {
    let keys = attach::parse_detach_keys(&args.detach_keys).map_err(|e| Stop::new(2, format!("--detach-keys: {e}")))?;
    let (mut supervisor, id, io) = prepare(args)?;
    let mut child = start_command(args, &mut supervisor, &id, io)?;
    let info = supervisor.info(&id).expect("prepared above").clone();
    let logs = match &info.stderr_log {
        Some(err) => format!("{} and {}", info.stdout_log.display(), err.display()),
        None => info.stdout_log.display().to_string(),
    };
    if args.detach {
        println!("{}", info.id);
        eprintln!(
            "switchboard: {} is running; attach with: switchboard attach {}",
            info.id,
            info.socket.display()
        );
        eprintln!("switchboard: its logs: {logs}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "switchboard: {} on {} (logs: {logs}); detach with {}",
        info.id,
        info.socket.display(),
        args.detach_keys
    );
    let options = attach::Options {
        stdin: true,
        detach_keys: keys,
        tty_hint: Some(args.tty),
        // The first client of a server that waited for it: every byte is new.
        begin: Some(crate::client::Begin::Live),
    };
    let ended = match attach::attach(&info.socket, &options) {
        Ok(ended) => ended,
        Err(e) => {
            // Nobody is attached to a container `run` was to attach: it is stopped,
            // rather than left running unseen.
            let stopped = match supervisor.stop(&id) {
                Ok(_) => "the container and its switchboard were stopped".to_string(),
                Err(s) => format!("stopping the container failed too: {s}"),
            };
            return Err(Stop::new(1, format!("{e} ({stopped})")));
        }
    };
    match ended {
        Ended::Detached => {
            eprintln!(
                "switchboard: attach again with: switchboard attach {}",
                info.socket.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Ended::Output => {
            let status = child.wait();
            // Reap the switchboard, which exits once its output is over.
            let _ = supervisor.watch(&id, std::time::Duration::from_secs(10));
            let status = status.map_err(|e| Stop::new(1, e.to_string()))?;
            Ok(ExitCode::from(agent::ExitRecord::of(status).shell_code()))
        }
    }
}

/// Launches the container's switchboard; returns the supervisor that holds it, the
/// container's id, and the container's ends of its stdio.
fn prepare(args: &RunArgs) -> Result<(Supervisor, String, ContainerIo), Stop> {
    let server_exe =
        std::env::current_exe().map_err(|e| Stop::new(1, format!("cannot find this program's path: {e}")))?;
    let id = args
        .name
        .clone()
        .map_or_else(agent::new_id, Ok)
        .map_err(|e| Stop::new(1, format!("cannot make an id: {e}")))?;
    let runtime_dir = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let mut supervisor = Supervisor::new(runtime_dir.clone(), server_exe.clone(), Timeouts::default());
    let launch = Launch {
        id: Some(id.clone()),
        tty: args.tty,
        runtime_dir,
        socket: args.socket.clone(),
        log_dir: args.log_dir.clone(),
        // When attaching, this terminal is the first client and sees every byte.
        wait_for_connection: !args.detach,
        heartbeat: None,
        command: args.command.clone(),
        server_exe,
        cri: args.log_format == "cri",
        // The program starts at this terminal's size (it is shown there, or attached
        // from one like it).
        window: match args.tty && crate::tty::is_terminal(std::io::stdin().as_fd()) {
            true => crate::tty::window_size(std::io::stdin().as_fd())
                .ok()
                .filter(|&(r, c)| r > 0 && c > 0),
            false => None,
        },
    };
    let io = supervisor
        .prepare(&id, launch)
        .map_err(|e| Stop::new(1, e.to_string()))?;
    Ok((supervisor, id, io))
}

/// Starts the command through its monitor (`switchboard monitor`, in a session of its
/// own), which is its parent for as long as it runs and records its pid and its end;
/// returns the monitor, which exits with the command's status.
fn start_command(args: &RunArgs, supervisor: &mut Supervisor, id: &str, io: ContainerIo) -> Result<Child, Stop> {
    let exe = std::env::current_exe().map_err(|e| Stop::new(1, format!("cannot find this program's path: {e}")))?;
    let dir = supervisor.runtime_dir().join(id);
    let mut cmd = Command::new(exe);
    cmd.arg("monitor").arg("--dir").arg(&dir);
    if args.tty {
        cmd.arg("--tty");
    }
    if args.rm {
        cmd.arg("--rm");
    }
    // With CRI logs the monitor drains the switchboard's log pipes (its fds 3 and 4).
    let mut mappings = Vec::new();
    if let Some((out, err)) = io.logs {
        let log = supervisor.info(id).expect("prepared").stdout_log.clone();
        cmd.arg("--cri-dir").arg(log.parent().unwrap_or(&dir));
        cmd.arg("--log-max-size").arg(args.log_max_size.to_string());
        cmd.arg("--log-max-files").arg(args.log_max_files.to_string());
        mappings.push(FdMapping {
            parent_fd: out,
            child_fd: 3,
        });
        if let Some(err) = err {
            cmd.arg("--cri-stderr");
            mappings.push(FdMapping {
                parent_fd: err,
                child_fd: 4,
            });
        }
    }
    let last_fd = mappings.iter().map(|m| m.child_fd).max().unwrap_or(2);
    cmd.fd_mappings(mappings).map_err(|e| Stop::new(1, e.to_string()))?;
    cmd.arg("--")
        .args(&args.command)
        .stdin(Stdio::from(io.stdin))
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr));
    crate::tty::new_session(&mut cmd, false, last_fd);
    let spawned = cmd.spawn();
    // Only the monitor holds its ends of the pipes or the terminal now.
    drop(cmd);
    let mut monitor = match spawned {
        Ok(m) => m,
        Err(e) => {
            let _ = supervisor.discard(id);
            return Err(Stop::new(1, format!("cannot start the monitor: {e}")));
        }
    };
    // The monitor records the command's pid once it started it, or its end if it could not.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if supervisor.reload(id).is_ok_and(|info| info.container_pid.is_some()) {
            return Ok(monitor);
        }
        if let Ok(Some(_)) = monitor.try_wait() {
            // It could not start the command: its switchboard (waiting for this
            // terminal, or for output) goes, with its records.
            let why = agent::ExitRecord::load(&dir)
                .ok()
                .flatten()
                .and_then(|r| r.error)
                .unwrap_or_else(|| format!("cannot start {}", args.command[0]));
            let _ = supervisor.discard(id);
            return Err(Stop::new(127, why));
        }
        if std::time::Instant::now() > deadline {
            let _ = monitor.kill();
            let _ = supervisor.stop(id);
            return Err(Stop::new(1, "the command did not start within 10 s"));
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}
