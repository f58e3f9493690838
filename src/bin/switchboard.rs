//! `switchboard`: the command line for people.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard::cli::attach::AttachArgs;
use switchboard::cli::logs::LogsArgs;
use switchboard::cli::manage::{PsArgs, RmArgs, StopArgs, WaitArgs};
use switchboard::cli::monitor::MonitorArgs;
use switchboard::cli::run::RunArgs;
use switchboard::cli::serve::ServeArgs;
use switchboard::cli::stats::StatsArgs;
use switchboard::server::{self, Exit};

/// An io_uring I/O switchboard for containers: it owns a container's stdio, logs every
/// byte of its output, fans the output out to any number of attached clients, and feeds
/// one client's input to the container, over the Mesos attach API on a unix socket.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a command under a switchboard and attach this terminal to it (like
    /// `docker run -it`): its output is logged and shown, your input goes to it, and it
    /// can be attached again from elsewhere. Exits with the command's status.
    Run(RunArgs),
    /// Attach this terminal to a switchboard's container (like `docker attach`): its
    /// output here, your input to it; the detach keys leave it running.
    Attach(AttachArgs),
    /// List the running containers under the runtime directory (-a: exited ones too):
    /// id, switchboard pid, status, socket and command.
    Ps(PsArgs),
    /// Stop a container and its switchboard; its records and logs are kept (see rm).
    Stop(StopArgs),
    /// Remove exited containers: their records, socket and logs (-f stops running ones).
    Rm(RmArgs),
    /// Wait for a container to exit; print its status and exit with it.
    Wait(WaitArgs),
    /// Print a container's output from its log (-f: and follow it until it exits).
    Logs(LogsArgs),
    /// What running switchboards are doing: clients, bytes read, logged and sent, clients
    /// cut, history held, input; refreshed every second (from each one's GET /metrics).
    Stats(StatsArgs),
    /// A browser terminal for the containers under the runtime directory, and their
    /// attach over the Kubernetes streaming protocol (WebSocket), on a loopback HTTP port
    /// guarded by a token (the switchboard-web program; `switchboard web --help`).
    #[command(disable_help_flag = true)]
    Web {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "ARGS")]
        args: Vec<std::ffi::OsString>,
    },
    /// The parent `run` starts a container through (it records the container's end).
    #[command(hide = true)]
    Monitor(MonitorArgs),
    /// Serve the attach API for a container whose descriptors you hold (its stdout and
    /// stderr are logged to this process's stdout and stderr unless told otherwise).
    Serve(ServeArgs),
}

fn main() -> ExitCode {
    // Before anything of ours is opened: `serve`'s descriptors are among these.
    switchboard::sys::note_inherited_fds();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => switchboard::cli::run::run(&args),
        Command::Attach(args) => switchboard::cli::attach::run(&args),
        Command::Ps(args) => switchboard::cli::manage::ps(&args),
        Command::Stop(args) => switchboard::cli::manage::stop(&args),
        Command::Rm(args) => switchboard::cli::manage::rm(&args),
        Command::Wait(args) => switchboard::cli::manage::wait(&args),
        Command::Logs(args) => switchboard::cli::logs::logs(&args),
        Command::Stats(args) => switchboard::cli::stats::stats(&args),
        Command::Web { args } => switchboard::cli::web(&args),
        Command::Monitor(args) => switchboard::cli::monitor::monitor(&args),
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard serve: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = switchboard::cli::init_logging(args.log_file.as_deref(), Some(&args.log_level)) {
        eprintln!("switchboard serve: {e}");
        return ExitCode::from(2);
    }
    // The log descriptors may be the terminal or someone's log file: once serving, only
    // container output goes there.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    match server::serve(config) {
        Ok(Exit::Done) => ExitCode::SUCCESS,
        Ok(Exit::Failed(why)) => {
            tracing::error!("{why}");
            ExitCode::FAILURE
        }
        // Once serving, stderr may be the container's log (--stderr-log-fd 2) or a pipe
        // nobody reads any more: the log file only.
        Err(why @ server::Error::Serving(_)) => {
            tracing::error!("{why}");
            ExitCode::FAILURE
        }
        // Before: both (a supervisor reads either: its stderr until it listens, its log).
        Err(why) => {
            tracing::error!("{why}");
            let _ = writeln!(std::io::stderr(), "switchboard serve: {why}");
            ExitCode::FAILURE
        }
    }
}
