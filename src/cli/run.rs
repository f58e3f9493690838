//! `switchboard run`: start a command under a switchboard and attach this terminal, like
//! `docker run -it`.

use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};

use clap::Args;

use crate::agent::{self, Launch, Supervisor, Timeouts};
use crate::cli::attach::{self, Ended};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Give the command a terminal (its stdout and stderr then arrive merged, as stdout).
    #[arg(long, short)]
    pub tty: bool,
    /// Start it and return at once, printing its id and socket.
    #[arg(long, short)]
    pub detach: bool,
    /// Name the container (default: 12 random hex digits).
    #[arg(long, value_name = "ID")]
    pub name: Option<String>,
    /// The socket path (default: <runtime dir>/<id>/sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Where the command's stdout and stderr logs go (default: <runtime dir>/<id>).
    #[arg(long, value_name = "DIR")]
    pub log_dir: Option<PathBuf>,
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

/// The exit status a shell would report for a process status.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => (128 + signal) as u8,
        _ => 1,
    }
}

pub fn run(args: &RunArgs) -> ExitCode {
    let keys = match attach::parse_detach_keys(&args.detach_keys) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("switchboard run: --detach-keys: {e}");
            return ExitCode::from(2);
        }
    };
    let server_exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("switchboard run: cannot find this program's path: {e}");
            return ExitCode::FAILURE;
        }
    };
    let id = match args.name.clone().map_or_else(agent::new_id, Ok) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("switchboard run: cannot make an id: {e}");
            return ExitCode::FAILURE;
        }
    };
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
    };
    let io = match supervisor.prepare(&id, launch) {
        Ok(io) => io,
        Err(e) => {
            eprintln!("switchboard run: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .stdin(Stdio::from(io.stdin))
        .stdout(Stdio::from(io.stdout))
        .stderr(Stdio::from(io.stderr));
    crate::tty::new_session(&mut cmd, args.tty, 2);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard run: cannot start {}: {e}", args.command[0]);
            // Its switchboard (waiting for this terminal, or for output) goes, with its
            // records.
            drop(cmd);
            let _ = supervisor.discard(&id);
            return ExitCode::from(127);
        }
    };
    // Only the command holds its ends of the pipes or the terminal now.
    drop(cmd);
    if let Err(e) = supervisor.set_container(&id, child.id() as i32) {
        eprintln!("switchboard run: cannot record the container: {e}");
    }
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
        return ExitCode::SUCCESS;
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
    };
    match attach::attach(&info.socket, &options) {
        Ok(Ended::Detached) => {
            eprintln!(
                "switchboard: attach again with: switchboard attach {}",
                info.socket.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Ended::Output) => {
            let status = child.wait();
            // Reap the switchboard, which exits once its output is over.
            let _ = supervisor.watch(&id, std::time::Duration::from_secs(10));
            match status {
                Ok(s) => ExitCode::from(exit_code(s)),
                Err(e) => {
                    eprintln!("switchboard run: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("switchboard run: {e}");
            ExitCode::FAILURE
        }
    }
}
