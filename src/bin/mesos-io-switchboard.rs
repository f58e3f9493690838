//! `mesos-io-switchboard`: the drop-in for Apache Mesos's binary of that name. An agent
//! starts it from its `--launcher_dir` with the container's fds and Mesos's flags.

use std::io::Write;
use std::process::ExitCode;

use switchboard::cli::mesos::{self, Parsed};
use switchboard::server::{self, Exit};

fn main() -> ExitCode {
    // Before anything of ours is opened: the container's descriptors are among these.
    switchboard::sys::note_inherited_fds();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flags = match mesos::parse(&args) {
        Parsed::Help(text) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Parsed::Usage(text) => {
            eprint!("{text}");
            return ExitCode::FAILURE;
        }
        Parsed::Run(flags) => *flags,
    };
    let log_file = flags
        .log_file
        .clone()
        .or_else(|| std::env::var_os("SWITCHBOARD_LOG_FILE").map(Into::into));
    if let Err(e) = switchboard::cli::init_logging(log_file.as_deref(), flags.log_level.as_deref()) {
        eprintln!("EXIT with status 1: {e}");
        return ExitCode::FAILURE;
    }
    // A panic (a bug) must not write into the container's stderr log either.
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    let config = match flags.config() {
        Ok(c) => c,
        Err(why) => {
            eprint!("{}", mesos::usage(Some(&why.to_string())) + "\n");
            return ExitCode::FAILURE;
        }
    };
    match server::serve(config) {
        Ok(Exit::Done) => ExitCode::SUCCESS,
        // fds 1 and 2 are the container's logs: a runtime failure is told by the exit
        // status and the diagnostics file only.
        Ok(Exit::Failed(why)) => {
            tracing::error!("EXIT with status 1: The io switchboard server failed: {why}");
            ExitCode::FAILURE
        }
        // fd 2 is the container's stderr log: once serving, the diagnostics file only.
        Err(why @ server::Error::Serving(_)) => {
            tracing::error!("EXIT with status 1: {why}");
            ExitCode::FAILURE
        }
        // Before serving nothing of the container's went to fds 1 and 2: say why once, as
        // Mesos does.
        Err(why) => {
            tracing::error!("EXIT with status 1: {why}");
            let _ = writeln!(std::io::stderr(), "EXIT with status 1: {why}");
            ExitCode::FAILURE
        }
    }
}
