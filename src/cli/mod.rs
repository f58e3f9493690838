//! Command lines: the stout flag grammar of the Mesos drop-in ([`stout`], [`mesos`]), and
//! the `switchboard` command's verbs ([`run`], [`attach`], [`serve`], and `ps`/`stop` in [`manage`]).

pub mod attach;
pub mod logs;
pub mod manage;
pub mod mesos;
pub mod monitor;
pub mod run;
pub mod serve;
pub mod stats;
pub mod stout;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The browser gateway's program, a separate one so that the servers never link (nor
/// wait to compile) its async HTTP stack.
pub const WEB_PROGRAM: &str = "switchboard-web";

/// `switchboard web ARGS`: runs [`WEB_PROGRAM`] with `ARGS` in place of this process,
/// from beside this program (where cargo builds it), else from `$PATH`.
pub fn web(args: &[std::ffi::OsString]) -> std::process::ExitCode {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(WEB_PROGRAM)))
        .filter(|p| p.exists());
    let program = beside.unwrap_or_else(|| PathBuf::from(WEB_PROGRAM));
    let error = std::process::Command::new(&program).args(args).exec();
    match error.kind() {
        io::ErrorKind::NotFound => eprintln!(
            "switchboard web: {WEB_PROGRAM} is not beside this program nor on $PATH: build it with \
             `cargo build --release -p {WEB_PROGRAM}` (a plain `cargo build --release` builds it too)"
        ),
        _ => eprintln!(
            "switchboard web: {}: {}",
            program.display(),
            crate::sys::strerror(&error)
        ),
    }
    std::process::ExitCode::from(2)
}

/// Diagnostics that cannot be set up as asked.
#[derive(Debug)]
pub enum LoggingError {
    UnknownLevel(String),
    Open { path: PathBuf, source: io::Error },
}

impl fmt::Display for LoggingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoggingError::UnknownLevel(level) => {
                write!(f, "Unknown log level '{level}': use error, warn, info, debug or trace")
            }
            LoggingError::Open { path, source } => write!(
                f,
                "Failed to open the log file '{}': {}",
                path.display(),
                crate::sys::strerror(source)
            ),
        }
    }
}

impl std::error::Error for LoggingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LoggingError::UnknownLevel(_) => None,
            LoggingError::Open { source, .. } => Some(source),
        }
    }
}

/// Sends diagnostics (`tracing`) to `file` at `level` (default `info`); without a file
/// they are off. The drop-in never writes them to fds 1 and 2.
pub fn init_logging(file: Option<&Path>, level: Option<&str>) -> Result<(), LoggingError> {
    let Some(path) = file else { return Ok(()) };
    let level: tracing::Level = match level.unwrap_or("info") {
        l @ ("error" | "warn" | "info" | "debug" | "trace") => l.parse().expect("a level name"),
        other => return Err(LoggingError::UnknownLevel(other.to_string())),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| LoggingError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_max_level(level)
        .with_target(false)
        .init();
    Ok(())
}
