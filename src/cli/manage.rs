//! `switchboard ps`, `stop`, `rm` and `wait`: the containers under a runtime directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;

use crate::agent::supervisor::{self, State};
use crate::agent::{self, Ended, ExitRecord, Info, Supervisor, Timeouts};
use crate::cli::serve::parse_duration;

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show exited containers too, with how they ended.
    #[arg(long, short)]
    pub all: bool,
    /// `table`, or `json` (one array of objects, for scripts).
    #[arg(long, value_name = "FORMAT", default_value = "table", value_parser = ["table", "json"])]
    pub format: String,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// The container: its id, or its socket path.
    #[arg(value_name = "ID|SOCKET")]
    pub target: String,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// How long the container, then its switchboard, get to exit before being signalled.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub grace: Duration,
    /// How long the switchboard gets after SIGTERM before SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// The containers: ids, or socket paths.
    #[arg(value_name = "ID|SOCKET", required = true)]
    pub targets: Vec<String>,
    /// Stop a running container first (otherwise it is refused).
    #[arg(long, short)]
    pub force: bool,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The container: its id, or its socket path.
    #[arg(value_name = "ID|SOCKET")]
    pub target: String,
    /// The runtime directory (default: as for `run`).
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
}

/// `5s`, `3m`, `2h` or `4d` since `then` (seconds since the epoch).
fn ago(then: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(then);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// `switchboard ps`: the running containers (all with `-a`), as a table (a header, then
/// id, switchboard pid, status, socket and command) or as JSON.
pub fn ps(args: &PsArgs) -> ExitCode {
    let dir = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let entries = match supervisor::list(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("switchboard ps: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rows: Vec<(supervisor::Entry, State)> = entries
        .into_iter()
        .map(|e| {
            let st = e.state();
            (e, st)
        })
        .filter(|(_, st)| args.all || matches!(st, State::Running))
        .collect();
    if args.format == "json" {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(e, st)| {
                let (status, record) = match st {
                    State::Running => ("running", None),
                    State::Ended(r) => ("exited", Some(r)),
                    State::Gone => ("gone", None),
                };
                serde_json::json!({
                    "id": e.info.id,
                    "pid": e.info.server_pid,
                    "container_pid": e.info.container_pid,
                    "status": status,
                    "exit_code": record.map(ExitRecord::shell_code),
                    "signal": record.and_then(|r| r.signal),
                    "finished": record.map(|r| r.finished),
                    "created": e.info.created,
                    "socket": e.info.socket,
                    "command": e.info.command,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return ExitCode::SUCCESS;
    }
    let status = |st: &State| match st {
        State::Running => "running".to_string(),
        State::Ended(r) => format!("{} {} ago", r.describe(), ago(r.finished)),
        State::Gone => "gone".to_string(),
    };
    let width = rows.iter().map(|(e, _)| e.info.id.len()).max().unwrap_or(2).max(2);
    let status_width = rows.iter().map(|(_, st)| status(st).len()).max().unwrap_or(6).max(6);
    let socket_width = rows
        .iter()
        .map(|(e, _)| e.info.socket.as_os_str().len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:>7}  {:<status_width$}  {:<socket_width$}  COMMAND",
        "ID", "PID", "STATUS", "SOCKET"
    );
    for (e, st) in &rows {
        println!(
            "{:<width$}  {:>7}  {:<status_width$}  {:<socket_width$}  {}",
            e.info.id,
            e.info.server_pid,
            status(st),
            e.info.socket.display(),
            e.info.command.join(" ")
        );
    }
    ExitCode::SUCCESS
}

/// The directory of the container `target` (an id, or a socket path) under `runtime`.
pub fn resolve(runtime: &Path, target: &str) -> Result<PathBuf, String> {
    let missing = || format!("no container '{target}' under {}", runtime.display());
    // (A runtime directory others control is refused here, saying why.)
    let entries = supervisor::list(runtime).map_err(|e| e.to_string())?;
    let dir = if target.contains('/') {
        entries
            .into_iter()
            .find(|e| e.info.socket == Path::new(target))
            .map(|e| e.dir)
            .ok_or_else(|| format!("no container under {} has the socket {target}", runtime.display()))?
    } else if matches!(target, "" | "." | "..") {
        // Not a name a container can have (and not a way out of the runtime directory).
        return Err(missing());
    } else {
        runtime.join(target)
    };
    match dir.join("info.json").exists() {
        true => Ok(dir),
        false => Err(missing()),
    }
}

/// [`resolve`] for verb `verb`, under `runtime_dir` or the default: the runtime
/// directory and the container's; a failure is said on stderr and is the exit code.
fn target_dir(verb: &str, runtime_dir: Option<&Path>, target: &str) -> Result<(PathBuf, PathBuf), ExitCode> {
    let runtime = runtime_dir.map_or_else(agent::default_runtime_dir, Path::to_path_buf);
    match resolve(&runtime, target) {
        Ok(dir) => Ok((runtime, dir)),
        Err(e) => {
            eprintln!("switchboard {verb}: {e}");
            Err(ExitCode::FAILURE)
        }
    }
}

/// `switchboard stop`: stops the container (SIGTERM, then SIGKILL), then its switchboard
/// as the supervisor's cleanup does, keeping its records and logs (`rm` removes them).
pub fn stop(args: &StopArgs) -> ExitCode {
    let (runtime, dir) = match target_dir("stop", args.runtime_dir.as_deref(), &args.target) {
        Ok(dirs) => dirs,
        Err(code) => return code,
    };
    let timeouts = Timeouts {
        grace: args.grace,
        terminate: args.timeout,
        ..Timeouts::default()
    };
    let mut sup = Supervisor::new(runtime.clone(), PathBuf::new(), timeouts);
    let id = match sup.adopt(&dir) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("switchboard stop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sup.stop_and_keep(&id) {
        Ok(ended) => {
            let how = match ended {
                Ended::Exited(_) => "its switchboard exited",
                Ended::Terminated => "its switchboard needed SIGTERM",
                Ended::Killed => "its switchboard needed SIGKILL",
                Ended::AlreadyGone => "its switchboard was gone already",
            };
            eprintln!("switchboard: stopped {id} ({how})");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("switchboard stop: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `switchboard rm`: removes exited containers' directories (records, socket, and the
/// logs unless `run --log-dir` put them elsewhere); a running one is refused, or stopped
/// first with `-f`.
pub fn rm(args: &RmArgs) -> ExitCode {
    let runtime = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let mut failed = false;
    for target in &args.targets {
        if let Err(e) = remove(&runtime, target, args.force) {
            eprintln!("switchboard rm: {e}");
            failed = true;
        }
    }
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn remove(runtime: &Path, target: &str, force: bool) -> Result<(), String> {
    let dir = resolve(runtime, target)?;
    let info = Info::load(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let running = info.running();
    let mut sup = Supervisor::new(runtime.to_path_buf(), PathBuf::new(), Timeouts::default());
    let id = sup.adopt(&dir).map_err(|e| e.to_string())?;
    if running && !force {
        return Err(format!("{id} is running: stop it first, or remove it with -f"));
    }
    // Only the container's own directory goes: a record is trusted for nothing outside
    // it (logs that `run --log-dir` put elsewhere stay where they are).
    match running {
        true => sup.stop(&id),
        false => sup.cleanup(&id),
    }
    .map_err(|e| e.to_string())?;
    if dir.exists() {
        return Err(format!("{} could not be removed", dir.display()));
    }
    println!("{id}");
    Ok(())
}

/// `switchboard wait`: waits until the container ended, prints its status (as a shell
/// reports it: the code, or 128 plus the signal) and exits with it.
pub fn wait(args: &WaitArgs) -> ExitCode {
    let dir = match target_dir("wait", args.runtime_dir.as_deref(), &args.target) {
        Ok((_, dir)) => dir,
        Err(code) => return code,
    };
    match ExitRecord::wait_for(&dir) {
        Ok(record) => {
            println!("{}", record.shell_code());
            ExitCode::from(record.shell_code())
        }
        Err(why) => {
            eprintln!("switchboard wait: {} ended, and {why}", args.target);
            ExitCode::FAILURE
        }
    }
}
