//! `switchboard ps` and `switchboard stop`: the containers under a runtime directory.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::agent::{self, Ended, Supervisor, Timeouts, supervisor};
use crate::cli::serve::parse_duration;

#[derive(Debug, Args)]
pub struct PsArgs {
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

/// `switchboard ps`: a header, then one row per container: id, switchboard pid, alive or
/// gone, socket, command.
pub fn ps(args: &PsArgs) -> ExitCode {
    let dir = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let entries = match supervisor::list(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("switchboard ps: {e}");
            return ExitCode::FAILURE;
        }
    };
    let width = entries.iter().map(|e| e.info.id.len()).max().unwrap_or(2).max(2);
    let socket_width = entries
        .iter()
        .map(|e| e.info.socket.as_os_str().len())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<width$}  {:>7}  {:<5}  {:<socket_width$}  COMMAND",
        "ID", "PID", "STATE", "SOCKET"
    );
    for e in entries {
        println!(
            "{:<width$}  {:>7}  {:<5}  {:<socket_width$}  {}",
            e.info.id,
            e.info.server_pid,
            if e.alive { "alive" } else { "gone" },
            e.info.socket.display(),
            e.info.command.join(" ")
        );
    }
    ExitCode::SUCCESS
}

/// `switchboard stop`: stops the container (SIGTERM, then SIGKILL), then cleans its
/// switchboard up as the supervisor's cleanup does.
pub fn stop(args: &StopArgs) -> ExitCode {
    let runtime = args.runtime_dir.clone().unwrap_or_else(agent::default_runtime_dir);
    let entries = match supervisor::list(&runtime) {
        Ok(entries) => entries,
        Err(e) => {
            eprintln!("switchboard stop: {e}");
            return ExitCode::FAILURE;
        }
    };
    let dir = if args.target.contains('/') {
        match entries
            .into_iter()
            .find(|e| e.info.socket == std::path::Path::new(&args.target))
        {
            Some(e) => e.dir,
            None => {
                eprintln!(
                    "switchboard stop: no container under {} has the socket {}",
                    runtime.display(),
                    args.target
                );
                return ExitCode::FAILURE;
            }
        }
    } else if matches!(args.target.as_str(), "" | "." | "..") {
        // Not a name a container can have (and not a way out of the runtime directory).
        eprintln!(
            "switchboard stop: no container '{}' under {}",
            args.target,
            runtime.display()
        );
        return ExitCode::FAILURE;
    } else {
        runtime.join(&args.target)
    };
    let timeouts = Timeouts {
        grace: args.grace,
        terminate: args.timeout,
        ..Timeouts::default()
    };
    let mut sup = Supervisor::new(runtime.clone(), PathBuf::new(), timeouts);
    let id = match sup.adopt(&dir) {
        Ok(id) => id,
        Err(_) if !dir.join("info.json").exists() => {
            eprintln!(
                "switchboard stop: no container '{}' under {}",
                args.target,
                runtime.display()
            );
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("switchboard stop: {e}");
            return ExitCode::FAILURE;
        }
    };
    match sup.stop(&id) {
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
